"""The nbdkit plugin (``vbmount.py``) and its helpers; nbdkit loads the plugin by path."""
