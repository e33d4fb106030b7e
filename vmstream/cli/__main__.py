import sys

from vmstream.cli import main

sys.exit(main())
