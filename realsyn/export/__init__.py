"""Export: OpenCLIP WebDataset shards and the parquet of the released RealSyn schema."""
