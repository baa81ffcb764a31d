"""The test suite, a package so its helper modules import by their full name (tests.ports, ...)."""
