"""The embedded runtime's files in the data directory: the SQLite journal, checkpoints,
outbox and rules (``sqlite``), the analytics tables (``analytics``), the address book
(``addresses``) and the suppression list (``suppression``)."""
