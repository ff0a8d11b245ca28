"""What an operator sees: set-up checks (doctor), live metrics and health, retention of published
objects, and the Hugging Face export. Imports nothing else from ``peers``."""
