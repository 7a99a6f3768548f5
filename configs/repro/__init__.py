"""Published experiments, one file each (`research reproduce --list`)."""
