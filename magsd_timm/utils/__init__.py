"""What every layer uses: atomic outputs, digests, seeds, tables, strict YAML, Hub file downloads, lazy attributes."""
