"""Model cards and Hub upload."""
