"""Bulk scanning: input readers, the streaming scanner, result writers, and the Ray Data path."""
