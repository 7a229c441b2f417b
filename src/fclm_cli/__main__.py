import sys

from fclm_cli import main

sys.exit(main())
