from gpt4all.quantize.app import main

main()
