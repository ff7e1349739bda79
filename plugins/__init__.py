"""Built-in plugins, registered through the same hooks (`bench.hookspecs`) as any third-party plugin."""
