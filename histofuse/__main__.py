from histofuse.cli import main

main()
