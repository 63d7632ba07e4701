"""Model-card templates shipped with cardiomm (Markdown with {placeholders})."""
