"""`sta eval`, in parts: dataset.py (the labelled videos, decoded in chunks), dist.py (torchrun
ranks), store.py (the resumable output folder), summary.py (the report), run.py (`evaluate`)."""
