from sbi_service.cli import main

main()
