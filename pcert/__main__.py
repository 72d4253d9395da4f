import sys

from pcert.cli import main

sys.exit(main())
