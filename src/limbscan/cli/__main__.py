"""``python -m limbscan.cli``: the ``limbscan`` command (torchrun's ``-m limbscan.cli`` too)."""

from limbscan.cli import main

if __name__ == "__main__":
    main()
