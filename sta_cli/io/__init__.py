"""Reading and writing: checkpoints and the Hub, artifacts, videos."""
