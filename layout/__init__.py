"""Region layouts: the data every node of the pack passes around, and its rasterisation (plain torch)."""
