from smartclip.cli import main
import sys
sys.exit(main())
