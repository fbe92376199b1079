"""Reading review files, the embedded default data set, and writing train/validation/test splits."""
