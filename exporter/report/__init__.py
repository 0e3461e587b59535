"""Reports of an export and of its parity: terminal tables, JSON (see SCHEMA.md) and a self-contained HTML page."""
