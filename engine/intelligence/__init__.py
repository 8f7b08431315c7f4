"""Customer intelligence: segments, RFM and predictions, evaluated per customer (pure)."""
