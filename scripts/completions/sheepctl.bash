# bash completion for sheepctl (dog's grammar: COMMAND SUBCOMMAND [options] args).
# Commands, subcommands and options come from sheepctl's own help, so this
# file follows the binary it completes; VDI names come from `vdi list -r`
# against the address and port already on the command line.

_sheepctl_help_cmds() {
    # "  vdi create    create an image" -> "vdi create"
    sheepctl 2>/dev/null | awk '/^  [a-z]/ { print $1, $2 }'
}

_sheepctl() {
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion || return
    else
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD-1]}
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
    fi

    local cmd=${words[1]} sub=${words[2]}
    case $cword in
    1)
        COMPREPLY=($(compgen -W "$(_sheepctl_help_cmds | awk '{print $1}' | sort -u) --help --version" -- "$cur"))
        return
        ;;
    2)
        COMPREPLY=($(compgen -W "$(_sheepctl_help_cmds | awk -v c="$cmd" '$1 == c { print $2 }')" -- "$cur"))
        return
        ;;
    esac

    # Options of this subcommand, from its --help ("  -a, --address  ...").
    if [[ $cur == -* ]]; then
        local opts
        if [[ $cmd == vdi && $sub == lock ]]; then
            opts=$(sheepctl vdi lock list --help 2>/dev/null | awk '/^  -/ { gsub(",", ""); print $1, $2 }')
        else
            opts=$(sheepctl "$cmd" "$sub" --help 2>/dev/null | awk '/^  -/ { gsub(",", ""); print $1, $2 }')
        fi
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return
    fi

    case $prev in
    -a|--address|-p|--port|-c|--copies|-z|--block_size_shift|-s|--snapshot|-b|--store)
        return
        ;;
    esac

    # `vdi lock` has its own subcommands.
    if [[ $cmd == vdi && $sub == lock && $cword -eq 3 ]]; then
        COMPREPLY=($(compgen -W "list unlock" -- "$cur"))
        return
    fi

    # The first argument of most vdi subcommands is a VDI name.
    if [[ $cmd == vdi ]]; then
        local i addr=() n=0
        for ((i = 3; i < cword; i++)); do
            case ${words[i]} in
            -a|--address|-p|--port) addr+=("${words[i]}" "${words[i+1]}"); ((i++)) ;;
            -*) ;;
            *) ((n++)) ;;
            esac
        done
        [[ $sub == lock ]] && ((n--))
        # create names a new VDI; tree takes no argument.
        if ((n == 0)) && [[ $sub != create && $sub != tree ]]; then
            COMPREPLY=($(compgen -W "$(sheepctl vdi list -r "${addr[@]}" 2>/dev/null | awk '{ print $2 }' | sort -u)" -- "$cur"))
        fi
    fi
}

complete -F _sheepctl sheepctl
