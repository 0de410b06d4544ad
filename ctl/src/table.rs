//! Columns that line up: the header and every row padded to the widest cell of each column.

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec![
                "default".to_string(),
                "10.32.0.0/12".to_string(),
                "1".to_string(),
            ],
            vec![
                "192.168.0.0/24".to_string(),
                "192.168.0.0/24".to_string(),
                "2".to_string(),
            ],
        ];
        assert_eq!(
            render(&["NAME", "SUBNET", "VNI"], &rows),
            "NAME            SUBNET          VNI\n\
             default         10.32.0.0/12    1\n\
             192.168.0.0/24  192.168.0.0/24  2\n"
        );
    }
}
