"""Stack-level utilities (no registration): safe checkpoint loading, atomic file writes."""
