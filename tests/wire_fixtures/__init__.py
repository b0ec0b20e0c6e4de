"""Components for the wire tests; a test copies a module into its job's app/custom/ folder for the site processes."""
