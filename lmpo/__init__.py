"""lmpo."""
