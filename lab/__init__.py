"""The lab: start the Microsoft emulator, write instance files for each authentication flow, and run
the `mde` CLI against it. Shared by `make demo`, the end-to-end tests and `make bench`."""
