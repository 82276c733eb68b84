import sys

from uld_vllm.batch.cli import main

sys.exit(main())
