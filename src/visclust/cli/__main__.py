import sys

try:
    from . import main
except KeyboardInterrupt:  # Ctrl-C while the heavy imports load: nothing was done yet
    sys.exit(130)

sys.exit(main())
