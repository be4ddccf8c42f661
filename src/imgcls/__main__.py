from imgcls.entry import main  # start-up's signal handlers come first

raise SystemExit(main())
