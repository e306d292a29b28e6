fn main() {
    let limits = xlb::dataplane::Limits {
        max_vips: 4,
        max_backends: 64,
        flow_table_entries: 1024,
        maglev_size: 65537,
    };
    match xlb::dataplane::Balancer::load(limits, None) {
        Ok(_) => println!("balancer loaded"),
        Err(e) => {
            println!("error: {e}");
            let mut s: &dyn std::error::Error = &e;
            while let Some(src) = s.source() {
                println!("  caused by: {src}");
                s = src;
            }
        }
    }
    for (obj, progs) in [
        (xlb::programs::DECAP, &["xlb_decap"][..]),
        (
            xlb::programs::REFERENCE,
            &["xlb_pass", "xlb_tx", "xlb_macswap"][..],
        ),
    ] {
        let mut e = aya::Ebpf::load(obj).unwrap();
        for p in progs {
            let x: &mut aya::programs::Xdp = e.program_mut(p).unwrap().try_into().unwrap();
            match x.load() {
                Ok(()) => println!("{p} loaded"),
                Err(e) => {
                    println!("{p}: {e}");
                    let mut s: &dyn std::error::Error = &e;
                    while let Some(src) = s.source() {
                        println!("  caused by: {src}");
                        s = src;
                    }
                }
            }
        }
    }
}
