"""The side-by-side benchmark behind `make bench`; see bench/README.md."""
