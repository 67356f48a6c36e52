"""The commands' work, one module per task: what a command does between parsing its options
(`cli/`) and the models it runs (`runtime/`, `models/`, `io/`). Each returns a report dataclass."""
