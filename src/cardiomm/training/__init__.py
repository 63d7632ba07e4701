"""The Accelerate training loop shared by every cardiomm objective."""
