from bridge.ops.cli import main

raise SystemExit(main())
