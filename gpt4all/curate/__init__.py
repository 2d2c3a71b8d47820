"""curate: filter the teacher's answers and count every drop with its reason."""
