"""What comes back: parsing and validation of generated examples with reasons, dedupe, export, and reports on the
dataset."""
