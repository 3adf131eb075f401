"""Command-line interface (typer)."""
def main():
    pass
