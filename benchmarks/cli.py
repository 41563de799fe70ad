"""The `cebench` console command (filled in below)."""
def main(argv=None):
    raise SystemExit("cebench CLI not yet wired")
