"""The kit's commands (train, infer, ensemble, score, ...): each module's main(argv) parses its flags and
drives the stages below; run() is its console entry point. The scripts at the repository root call them."""
