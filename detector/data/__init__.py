"""The data path: import public datasets into shards (``prepare``), then read them back (``loader``)."""
