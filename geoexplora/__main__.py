import sys

from geoexplora.cli import main

sys.exit(main())
