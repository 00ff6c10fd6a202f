from services.cli import main

main(prog_name="vlwatch")
