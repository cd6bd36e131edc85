"""Command-line interface: one module per command group; ``main`` only wires them."""
