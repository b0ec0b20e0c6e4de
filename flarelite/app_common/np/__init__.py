"""numpy pieces: the NP persistor, locator, validator and recipes."""
