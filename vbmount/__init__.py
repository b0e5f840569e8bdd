"""vbmount: expose a vbbackup backup set as a block device or file system."""
