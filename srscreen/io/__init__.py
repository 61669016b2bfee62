"""Reading structures: sources (folders, archives, databases, JSON lines, Materials Project), one parser per
format, cell checks and atomic file writes. The lowest floor: imports nothing else of srscreen but `errors`."""
