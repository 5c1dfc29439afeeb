"""Installing: the applicator, its state, target file operations, health checks."""
