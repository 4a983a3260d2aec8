"""Data layout discovery, the index table, format readers and encodings, Datasets and samplers."""
