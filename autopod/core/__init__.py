"""The plumbing every room uses: settings and inventory, state files and locks, output and the
exit-code contract, errors, logging, signals, paths and processes. Imports nothing above it."""
