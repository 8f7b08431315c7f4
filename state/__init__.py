"""Per-customer state: the data model, windowed counters, and the store interface with backends."""
